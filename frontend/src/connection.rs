//! The connection to the Switchboard server as Leptos signals: state, client id, round-trip
//! time. It reconnects with jittered backoff, obeys the server's close codes, and measures
//! the round-trip time with application-level pings.

use std::time::Duration;

use futures::channel::oneshot;
use futures::{FutureExt, SinkExt, StreamExt};
use gloo_net::websocket::{Message, WebSocketError, futures::WebSocket};
use gloo_timers::future::sleep;
use leptos::prelude::*;
use switchboard_protocol::{ClientFrame, CloseCode, Reconnect, ServerFrame, codec};
use wasm_bindgen_futures::spawn_local;

use crate::backoff::Backoff;

/// Where the connection is.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnState {
    /// Opening the socket, waiting for `welcome`.
    Connecting,
    /// `welcome` received.
    Open,
    /// Lost; the next attempt (1-based) starts after `delay`.
    Reconnecting {
        /// The attempt about to be made.
        attempt: u32,
        /// How long until it starts.
        delay: Duration,
    },
    /// Closed for good (the server refused us, or [`Connection::close`] was called).
    Closed,
}

impl ConnState {
    /// A one-word label for the UI and tests: connecting, connected, reconnecting, closed.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Open => "connected",
            Self::Reconnecting { .. } => "reconnecting",
            Self::Closed => "closed",
        }
    }
}

/// Options for [`use_connection_with_options`].
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Reconnect delays. Defaults to [`Backoff::default`].
    pub backoff: Backoff,
    /// How often to measure the round-trip time with a `ping`. Defaults to 5 s.
    pub ping_interval: Duration,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            ping_interval: Duration::from_secs(5),
        }
    }
}

/// The connection's reactive state.
#[derive(Clone, Copy)]
pub struct Connection {
    /// Connecting, connected, reconnecting or closed.
    pub state: ReadSignal<ConnState>,
    /// Our id from `welcome`.
    pub client_id: ReadSignal<Option<String>>,
    /// Last measured round-trip time in milliseconds.
    pub rtt_ms: ReadSignal<Option<f64>>,
    /// How many times the connection was re-established.
    pub reconnects: ReadSignal<u32>,
    /// The last problem, for display.
    pub last_error: ReadSignal<Option<String>>,
    stop: StoredValue<Option<oneshot::Sender<()>>, LocalStorage>,
}

impl Connection {
    /// Closes the connection for good.
    pub fn close(&self) {
        if let Some(tx) = self.stop.try_update_value(Option::take).flatten() {
            let _ = tx.send(());
        }
    }
}

/// `ws://host/ws` or `wss://host/ws` for a page at `protocol` (`"http:"`/`"https:"`) and
/// `host`.
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
pub fn use_connection(url: String) -> Connection {
    use_connection_with_options(url, ConnectionOptions::default())
}

/// Connects to `url` and keeps the connection up until [`Connection::close`] or until the
/// owning reactive scope is disposed.
pub fn use_connection_with_options(url: String, options: ConnectionOptions) -> Connection {
    let (state, set_state) = signal(ConnState::Connecting);
    let (client_id, set_client_id) = signal(None);
    let (rtt_ms, set_rtt) = signal(None);
    let (reconnects, set_reconnects) = signal(0u32);
    let (last_error, set_error) = signal(None);
    let (stop_tx, stop_rx) = oneshot::channel();
    let conn = Connection {
        state,
        client_id,
        rtt_ms,
        reconnects,
        last_error,
        stop: StoredValue::new_local(Some(stop_tx)),
    };
    on_cleanup(move || conn.close());
    let setters = Setters {
        state: set_state,
        client_id: set_client_id,
        rtt: set_rtt,
        reconnects: set_reconnects,
        error: set_error,
    };
    spawn_local(run(url, options, setters, stop_rx));
    conn
}

struct Setters {
    state: WriteSignal<ConnState>,
    client_id: WriteSignal<Option<String>>,
    rtt: WriteSignal<Option<f64>>,
    reconnects: WriteSignal<u32>,
    error: WriteSignal<Option<String>>,
}

/// How one socket's life ended.
enum Ended {
    /// Closed by the server or the network, with this code.
    Lost(CloseCode),
    /// We were asked to stop.
    Stopped,
}

async fn run(url: String, options: ConnectionOptions, set: Setters, stop: oneshot::Receiver<()>) {
    let mut stop = stop.fuse();
    let mut attempt: u32 = 0;
    let mut ever_open = false;
    loop {
        set.state.set(ConnState::Connecting);
        let (ended, opened) = futures::select! {
            r = session(&url, &options, &set, ever_open).fuse() => r,
            _ = stop => (Ended::Stopped, false),
        };
        if opened {
            ever_open = true;
            attempt = 0;
        }
        let code = match ended {
            Ended::Stopped => break,
            Ended::Lost(code) => code,
        };
        let rule = code.reconnect();
        if rule == Reconnect::Never {
            set.error.set(Some(format!("closed by server: {code}")));
            break;
        }
        // `Now` starts from the smallest ceiling; `Backoff` keeps growing.
        if rule == Reconnect::Now && opened {
            attempt = 0;
        }
        let delay = options.backoff.delay(attempt, js_sys::Math::random());
        attempt = attempt.saturating_add(1);
        set.state.set(ConnState::Reconnecting { attempt, delay });
        futures::select! {
            _ = sleep(delay).fuse() => {}
            _ = stop => break,
        }
    }
    set.state.set(ConnState::Closed);
}

/// One socket from open to close. Returns how it ended and whether `welcome` arrived.
/// `reconnect` says whether an earlier socket was open, so a `welcome` counts a reconnect.
async fn session(
    url: &str,
    options: &ConnectionOptions,
    set: &Setters,
    reconnect: bool,
) -> (Ended, bool) {
    let ws = match WebSocket::open(url) {
        Ok(ws) => ws,
        Err(e) => {
            set.error.set(Some(format!("cannot open {url}: {e}")));
            return (Ended::Lost(CloseCode::ABNORMAL), false);
        }
    };
    let (mut tx, rx) = ws.split();
    let mut rx = rx.fuse();
    let mut opened = false;
    let mut ping_seq: u64 = 0;
    let mut ping_sent: Option<(String, f64)> = None;
    let mut ticker = sleep(options.ping_interval).fuse();
    loop {
        futures::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    for frame in codec::decode_server(&text) {
                        match frame {
                            Ok(ServerFrame::Welcome { client_id, .. }) => {
                                if reconnect && !opened {
                                    set.reconnects.update(|n| *n += 1);
                                }
                                opened = true;
                                set.client_id.set(Some(client_id.0));
                                set.state.set(ConnState::Open);
                                set.error.set(None);
                                // measure the round trip right away
                                ticker = sleep(Duration::ZERO).fuse();
                            }
                            Ok(ServerFrame::Pong { id: Some(id) }) => {
                                if let Some((want, at)) = &ping_sent
                                    && *want == id.0
                                {
                                    set.rtt.set(Some(now_ms() - at));
                                    ping_sent = None;
                                }
                            }
                            Ok(ServerFrame::Error { code, message, .. }) => {
                                set.error.set(Some(format!("{code}: {message}")));
                            }
                            Ok(_) => {}
                            Err(e) => set.error.set(Some(format!("bad frame from server: {e}"))),
                        }
                    }
                }
                Some(Ok(Message::Bytes(_))) => {}
                Some(Err(WebSocketError::ConnectionClose(ev))) => {
                    return (Ended::Lost(CloseCode(ev.code)), opened);
                }
                Some(Err(e)) => {
                    set.error.set(Some(e.to_string()));
                    return (Ended::Lost(CloseCode::ABNORMAL), opened);
                }
                None => return (Ended::Lost(CloseCode::ABNORMAL), opened),
            },
            _ = ticker => {
                ticker = sleep(options.ping_interval).fuse();
                if opened {
                    ping_seq += 1;
                    let id = ping_seq.to_string();
                    ping_sent = Some((id.clone(), now_ms()));
                    let ping = codec::encode(&ClientFrame::Ping { id: Some(id.into()) });
                    if tx.send(Message::Text(ping)).await.is_err() {
                        return (Ended::Lost(CloseCode::ABNORMAL), opened);
                    }
                }
            }
        }
    }
}

fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .unwrap_or(0.0)
}

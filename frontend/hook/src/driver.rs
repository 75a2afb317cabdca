//! The one module that touches the browser: a `web_sys::WebSocket`, timers, and the
//! `online` / `visibilitychange` events. It feeds the client core what happened and does
//! what the core asks; no protocol decision is made here.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::channel::mpsc;
use gloo_timers::callback::Timeout;
use leptos::prelude::*;
use switchboard_client::Action;
use switchboard_protocol::CloseCode;
use wasm_bindgen::JsCast;
use wasm_bindgen::closure::Closure;
use web_sys::{CloseEvent, MessageEvent};

use crate::handle::{WebSocket, clock_ms, pump, take_io};
use crate::options::TokenProvider;

/// What a socket reported.
enum Sock {
    Open,
    Text(String),
    Closed {
        code: Option<CloseCode>,
        reason: String,
    },
}

/// A browser WebSocket whose callbacks feed a channel; closing it detaches them, so
/// nothing from an old socket reaches the core.
struct Socket {
    ws: web_sys::WebSocket,
    _handlers: [Closure<dyn FnMut(web_sys::Event)>; 3],
}

impl Socket {
    /// Opens `url`; with `messagepack`, offering the MessagePack subprotocol (binary
    /// frames are then transcoded to and from the JSON the core speaks).
    fn open(
        url: &str,
        tx: mpsc::UnboundedSender<Input>,
        generation: u32,
        messagepack: bool,
    ) -> Result<Self, String> {
        let ws = if messagepack {
            web_sys::WebSocket::new_with_str(url, MSGPACK).map_err(|e| format!("{e:?}"))?
        } else {
            web_sys::WebSocket::new(url).map_err(|e| format!("{e:?}"))?
        };
        ws.set_binary_type(web_sys::BinaryType::Arraybuffer);
        let on_open = {
            let tx = tx.clone();
            Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
                let _ = tx.unbounded_send(Input::Sock(generation, Sock::Open));
            })
        };
        let on_message = {
            let tx = tx.clone();
            Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
                let Ok(e) = e.dyn_into::<MessageEvent>() else {
                    return;
                };
                let sock = match e.data().as_string() {
                    Some(text) => Sock::Text(text),
                    None => match binary(&e.data()) {
                        Some(sock) => sock,
                        None => return,
                    },
                };
                let _ = tx.unbounded_send(Input::Sock(generation, sock));
            })
        };
        let on_close = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
            let (code, reason) = match e.dyn_into::<CloseEvent>() {
                Ok(c) => (Some(CloseCode(c.code())), c.reason()),
                Err(_) => (None, String::new()),
            };
            let _ = tx.unbounded_send(Input::Sock(generation, Sock::Closed { code, reason }));
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Self {
            ws,
            _handlers: [on_open, on_message, on_close],
        })
    }

    /// Sends one frame (or batch) of JSON: as it is, or as MessagePack when the server
    /// agreed to it.
    fn send(&self, text: &str) -> bool {
        #[cfg(feature = "msgpack")]
        if self.ws.protocol() == MSGPACK {
            let packed =
                switchboard_protocol::msgpack::from_json(text.as_bytes()).unwrap_or_default();
            return self.ws.send_with_u8_array(&packed).is_ok();
        }
        self.ws.send_with_str(text).is_ok()
    }

    fn close(self, code: CloseCode, reason: &str) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close_with_code_and_reason(code.0, reason);
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
    }
}

/// The MessagePack subprotocol's name (offered only with the `msgpack` feature).
#[cfg(feature = "msgpack")]
const MSGPACK: &str = switchboard_protocol::msgpack::SUBPROTOCOL_MSGPACK;
#[cfg(not(feature = "msgpack"))]
const MSGPACK: &str = "";

/// A binary message: a MessagePack frame transcoded to JSON for the core (or the end of
/// the connection, with the reason, when it is not MessagePack).
#[cfg(feature = "msgpack")]
fn binary(data: &wasm_bindgen::JsValue) -> Option<Sock> {
    let buffer = data.dyn_ref::<js_sys::ArrayBuffer>()?;
    let bytes = js_sys::Uint8Array::new(buffer).to_vec();
    Some(
        match switchboard_protocol::msgpack::to_json(&bytes, 64 << 20) {
            Ok(text) => Sock::Text(text),
            Err(e) => Sock::Closed {
                code: None,
                reason: format!("undecodable MessagePack from the server: {e}"),
            },
        },
    )
}

/// Without the `msgpack` feature binary messages are not part of the protocol.
#[cfg(not(feature = "msgpack"))]
fn binary(_data: &wasm_bindgen::JsValue) -> Option<Sock> {
    None
}

/// What the driver's loop waits for: one channel for everything, so the loop awaits one
/// receiver (a `select!` over a socket channel, a wake channel and a sleep future was one
/// of the bundle's largest functions; docs/benchmarks.md).
enum Input {
    /// The handles changed something (a publish, a subscription): see what the core wants.
    Wake,
    /// The core's deadline passed (an early or stale one is harmless: the core does what
    /// is due at the time it is told).
    Tick,
    /// What the socket of this generation reported; an older socket's late events are
    /// dropped by their generation.
    Sock(u32, Sock),
}

/// Starts the connection's task (in the browser only: during SSR nothing runs).
pub(crate) fn start(ws: WebSocket, url: String, token: Option<TokenProvider>, messagepack: bool) {
    let (tx, rx) = mpsc::unbounded();
    // Wakes are one until the loop takes one: a burst of publishes queues a single wake.
    let woken = Rc::new(Cell::new(false));
    {
        let tx = tx.clone();
        let woken = woken.clone();
        let wake: Rc<dyn Fn()> = Rc::new(move || {
            if !woken.replace(true) {
                let _ = tx.unbounded_send(Input::Wake);
            }
        });
        ws.conn.update_value(|c| c.wake = Some(wake));
    }
    let stopped = Arc::new(AtomicBool::new(false));
    let listeners = watch_network(ws);
    {
        let stopped = stopped.clone();
        on_cleanup(move || {
            stopped.store(true, Ordering::Relaxed);
            ws.conn.try_with_value(|c| c.wake());
            for l in listeners {
                l.remove();
            }
        });
    }
    let driver = Driver {
        ws,
        url,
        token,
        messagepack,
        tx,
    };
    wasm_bindgen_futures::spawn_local(driver.run(rx, woken, stopped));
}

/// Retry at once when the browser comes back online or the tab becomes visible.
fn watch_network(ws: WebSocket) -> Vec<WindowListenerHandle> {
    vec![
        window_event_listener(leptos::ev::online, move |_| ws.kick()),
        window_event_listener(leptos::ev::visibilitychange, move |_| {
            if document().visibility_state() == web_sys::VisibilityState::Visible {
                ws.kick();
            }
        }),
    ]
}

struct Driver {
    ws: WebSocket,
    url: String,
    token: Option<TokenProvider>,
    messagepack: bool,
    tx: mpsc::UnboundedSender<Input>,
}

impl Driver {
    async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<Input>,
        woken: Rc<Cell<bool>>,
        stopped: Arc<AtomicBool>,
    ) {
        let ws = self.ws;
        let mut socket: Option<Socket> = None;
        let mut generation = 0u32;
        // The browser timer for the core's next deadline, and that deadline: kept while the
        // deadline stays the same (most inputs do not move it), replaced (which clears the
        // old one) when it moves, dropped once it has fired.
        let mut timer: Option<(u64, Timeout)> = None;
        loop {
            if stopped.load(Ordering::Relaxed) {
                if let Some(s) = socket.take() {
                    s.close(CloseCode::NORMAL, "page left");
                }
                return;
            }
            pump(ws);
            let (actions, transmit) = take_io(ws);
            for action in actions {
                match action {
                    Action::Connect => {
                        if let Some(old) = socket.take() {
                            old.close(CloseCode::NORMAL, "replaced");
                        }
                        generation = generation.wrapping_add(1);
                        socket = self.connect(generation, &stopped).await;
                        if stopped.load(Ordering::Relaxed) {
                            // Left while the token provider worked: nothing more to do
                            // (no socket was opened).
                            return;
                        }
                    }
                    Action::Disconnect { code, reason } => {
                        if let Some(s) = socket.take() {
                            s.close(code, &reason);
                        }
                    }
                    Action::RefreshToken => self.refresh_token(),
                }
            }
            if !transmit.is_empty() {
                if let Some(s) = &socket {
                    let sent = transmit.iter().filter(|text| s.send(text)).count();
                    if let Some(set) = ws.set.try_get_value() {
                        set.frames_out.try_update(|n| *n += sent as u64);
                    }
                }
                continue;
            }
            let deadline = ws.conn.try_with_value(|c| c.core.next_deadline()).flatten();
            if timer.as_ref().map(|(at, _)| *at) != deadline {
                timer = deadline.map(|at| {
                    let wait = at.saturating_sub(clock_ms()).min(i32::MAX as u64) as u32;
                    let tx = self.tx.clone();
                    let fire = Timeout::new(wait, move || {
                        let _ = tx.unbounded_send(Input::Tick);
                    });
                    (at, fire)
                });
            }
            let Some(input) = rx.next().await else {
                return;
            };
            let now = clock_ms();
            match input {
                Input::Wake => woken.set(false),
                Input::Tick => {
                    // Fired (or a replaced timer's late tick): arm again for what is next.
                    timer = None;
                    ws.conn.try_update_value(|c| c.core.on_tick(now));
                }
                Input::Sock(of, _) if of != generation => {}
                Input::Sock(_, Sock::Open) => {
                    ws.conn.try_update_value(|c| c.core.on_connected(now));
                }
                Input::Sock(_, Sock::Text(text)) => {
                    if let Some(set) = ws.set.try_get_value() {
                        set.frames_in.try_update(|n| *n += 1);
                    }
                    ws.conn.try_update_value(|c| c.core.on_text(&text, now));
                }
                Input::Sock(_, Sock::Closed { code, reason }) => {
                    // Closed by the browser (closing again does nothing then), or given up
                    // on here (a MessagePack message that did not decode): either way the
                    // browser's socket is closed, not left open without its handlers.
                    if let Some(s) = socket.take() {
                        s.close(CloseCode::INVALID_PAYLOAD, "undecodable message");
                    }
                    ws.conn
                        .try_update_value(|c| c.core.on_disconnected(code, &reason, now));
                }
            }
        }
    }

    /// Opens a socket with a fresh token (if there is a provider); a failure to open is
    /// reported as that socket's close. Opens none if the page was left while the provider
    /// was working.
    async fn connect(&self, generation: u32, stopped: &AtomicBool) -> Option<Socket> {
        let fresh = match &self.token {
            Some(provider) => provider().await,
            None => None,
        };
        if stopped.load(Ordering::Relaxed) {
            return None;
        }
        let now = clock_ms();
        self.ws.conn.try_update_value(|c| {
            c.core
                .set_token(fresh.as_deref(), now, js_sys::Date::now() as u64)
        });
        let full = match fresh {
            Some(t) => format!(
                "{}?token={}",
                self.url,
                String::from(js_sys::encode_uri_component(&t))
            ),
            None => self.url.clone(),
        };
        match Socket::open(&full, self.tx.clone(), generation, self.messagepack) {
            Ok(s) => Some(s),
            Err(reason) => {
                let closed = Sock::Closed { code: None, reason };
                let _ = self.tx.unbounded_send(Input::Sock(generation, closed));
                None
            }
        }
    }

    /// Asks the provider for a new token beside the loop: a slow provider must not hold
    /// up the socket.
    fn refresh_token(&self) {
        let Some(provider) = &self.token else {
            return;
        };
        let fresh = provider();
        let ws = self.ws;
        wasm_bindgen_futures::spawn_local(async move {
            let fresh = fresh.await;
            let now = clock_ms();
            ws.conn.try_update_value(|c| {
                c.core.refresh_token(fresh, now, js_sys::Date::now() as u64);
                c.wake();
            });
        });
    }
}

//! The one module that touches the browser: a `web_sys::WebSocket`, timers, and the
//! `online` / `visibilitychange` events. It feeds the client core what happened and does
//! what the core asks; no protocol decision is made here.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};
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
    fn open(url: &str, tx: mpsc::UnboundedSender<Sock>, messagepack: bool) -> Result<Self, String> {
        let ws = if messagepack {
            web_sys::WebSocket::new_with_str(url, MSGPACK).map_err(|e| format!("{e:?}"))?
        } else {
            web_sys::WebSocket::new(url).map_err(|e| format!("{e:?}"))?
        };
        ws.set_binary_type(web_sys::BinaryType::Arraybuffer);
        let on_open = {
            let tx = tx.clone();
            Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
                let _ = tx.unbounded_send(Sock::Open);
            })
        };
        let on_message = {
            let tx = tx.clone();
            Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
                let Ok(e) = e.dyn_into::<MessageEvent>() else {
                    return;
                };
                if let Some(text) = e.data().as_string() {
                    let _ = tx.unbounded_send(Sock::Text(text));
                } else if let Some(text) = binary(&e.data()) {
                    let _ = tx.unbounded_send(text);
                }
            })
        };
        let on_close = Closure::<dyn FnMut(web_sys::Event)>::new(move |e: web_sys::Event| {
            let (code, reason) = match e.dyn_into::<CloseEvent>() {
                Ok(c) => (Some(CloseCode(c.code())), c.reason()),
                Err(_) => (None, String::new()),
            };
            let _ = tx.unbounded_send(Sock::Closed { code, reason });
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

/// Starts the connection's task (in the browser only: during SSR nothing runs).
pub(crate) fn start(ws: WebSocket, url: String, token: Option<TokenProvider>, messagepack: bool) {
    let (wake_tx, wake_rx) = mpsc::channel(1);
    ws.conn.update_value(|c| c.wake = Some(wake_tx));
    let stopped = Arc::new(AtomicBool::new(false));
    let listeners = watch_network(ws);
    {
        let stopped = stopped.clone();
        on_cleanup(move || {
            stopped.store(true, Ordering::Relaxed);
            ws.conn.try_update_value(|c| {
                if let Some(wake) = &mut c.wake {
                    let _ = wake.try_send(());
                }
            });
            for l in listeners {
                l.remove();
            }
        });
    }
    wasm_bindgen_futures::spawn_local(run(ws, url, token, messagepack, wake_rx, stopped));
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

async fn run(
    ws: WebSocket,
    url: String,
    token: Option<TokenProvider>,
    messagepack: bool,
    mut wake: mpsc::Receiver<()>,
    stopped: Arc<AtomicBool>,
) {
    // Replaced by each new socket's own channel.
    let mut sock_rx = mpsc::unbounded::<Sock>().1;
    let mut socket: Option<Socket> = None;
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
                    // A fresh channel: an old socket's late events cannot reach the core.
                    let (tx, rx) = mpsc::unbounded();
                    sock_rx = rx;
                    let fresh = match &token {
                        Some(provider) => provider().await,
                        None => None,
                    };
                    let now = clock_ms();
                    ws.conn.try_update_value(|c| {
                        c.core
                            .set_token(fresh.as_deref(), now, js_sys::Date::now() as u64)
                    });
                    let full = match fresh {
                        Some(t) => format!(
                            "{url}?token={}",
                            String::from(js_sys::encode_uri_component(&t))
                        ),
                        None => url.clone(),
                    };
                    match Socket::open(&full, tx.clone(), messagepack) {
                        Ok(s) => socket = Some(s),
                        Err(e) => {
                            let _ = tx.unbounded_send(Sock::Closed {
                                code: None,
                                reason: e,
                            });
                        }
                    }
                }
                Action::Disconnect { code, reason } => {
                    if let Some(s) = socket.take() {
                        s.close(code, &reason);
                    }
                }
                Action::RefreshToken => {
                    // Beside the loop: a slow provider must not hold up the socket.
                    if let Some(provider) = &token {
                        let fresh = provider();
                        wasm_bindgen_futures::spawn_local(async move {
                            let fresh = fresh.await;
                            let now = clock_ms();
                            ws.conn.try_update_value(|c| {
                                c.core.refresh_token(fresh, now, js_sys::Date::now() as u64);
                                if let Some(wake) = &mut c.wake {
                                    let _ = wake.try_send(());
                                }
                            });
                        });
                    }
                }
            }
        }
        if !transmit.is_empty() {
            if let Some(s) = &socket {
                let mut sent = 0;
                for text in &transmit {
                    if s.send(text) {
                        sent += 1;
                    }
                }
                if let Some(set) = ws.set.try_get_value() {
                    set.frames_out.try_update(|n| *n += sent);
                }
            }
            continue;
        }
        let deadline = ws.conn.try_with_value(|c| c.core.next_deadline()).flatten();
        let sleep = match deadline {
            Some(at) => {
                let wait = at.saturating_sub(clock_ms());
                gloo_timers::future::sleep(Duration::from_millis(wait)).boxed_local()
            }
            None => futures::future::pending().boxed_local(),
        };
        let mut sleep = sleep.fuse();
        futures::select! {
            () = sleep => {
                let now = clock_ms();
                ws.conn.try_update_value(|c| c.core.on_tick(now));
            }
            _ = wake.next() => {}
            ev = sock_rx.next() => {
                let now = clock_ms();
                match ev {
                    Some(Sock::Open) => {
                        ws.conn.try_update_value(|c| c.core.on_connected(now));
                    }
                    Some(Sock::Text(text)) => {
                        if let Some(set) = ws.set.try_get_value() {
                            set.frames_in.try_update(|n| *n += 1);
                        }
                        ws.conn.try_update_value(|c| c.core.on_text(&text, now));
                    }
                    Some(Sock::Closed { code, reason }) => {
                        socket = None;
                        ws.conn.try_update_value(|c| c.core.on_disconnected(code, &reason, now));
                    }
                    None => {}
                }
            }
        }
    }
}

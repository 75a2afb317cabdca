//! The demo app: chat rooms with presence and typing, server-pushed notifications as toasts,
//! a live ticker rendered at a throttled rate, and a connection inspector with a "go
//! offline" switch. Everything talks through one [`WebSocket`] from context.
//!
//! For tests and tinkering, the page reads hook options from its query string:
//! `?ping_ms=1000&pong_ms=1000` (the dead-link check), `?backoff_ms=200` (the first
//! reconnect delay).
//!
//! Delivery: a room shows its last [`REWIND`] lines when you join (the subscription's
//! `rewind`), what you missed when you come back (the hook resubscribes from the last line
//! it delivered), and says so when lines were lost for good (a reset: it then shows the
//! latest again). Lines typed offline wait in the outbox, which this app keeps in
//! `localStorage`, so they are sent once even after the page is reloaded.

use std::time::Duration;

use leptos::html::Div;
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use switchboard_leptos::{
    Backoff, ConnState, PublishResult, Received, Recovery, SubOptions, SubState, Subscription,
    UseWebSocketOptions, WebSocket, expect_websocket, now_ms, provide_websocket,
    same_origin_ws_url,
};
use switchboard_protocol::{Payload, PresenceAction};

/// How often the UI samples fast-changing state (ticker, countdown, typing).
const UI_TICK: Duration = Duration::from_millis(250);

/// Chat lines a room keeps on screen.
const CHAT_LOG: usize = 1000;

/// Recent lines a room shows when you join it.
const REWIND: u32 = 50;

/// Where the demo keeps its unsent lines across reloads.
const OUTBOX_KEY: &str = "switchboard-demo-outbox";

/// A chat line, or (ephemeral) a typing signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Chat {
    name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    text: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    typing: bool,
}

/// A ticker price.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Tick {
    price: f64,
}

/// A notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Notice {
    text: String,
}

/// Presence info.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Who {
    #[serde(default)]
    name: String,
}

/// Hook options from the page's query string (see the module docs).
fn options_from_query() -> UseWebSocketOptions {
    let mut options = UseWebSocketOptions {
        persist_outbox: Some(OUTBOX_KEY.into()),
        ..UseWebSocketOptions::default()
    };
    let search = window().location().search().unwrap_or_default();
    for pair in search.trim_start_matches('?').split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        let Ok(ms) = value.parse::<u64>() else {
            continue;
        };
        let d = Duration::from_millis(ms);
        match key {
            "ping_ms" => options.ping_interval = d,
            "pong_ms" => options.pong_timeout = d,
            "backoff_ms" => {
                options.backoff = Backoff {
                    base: d,
                    ..Backoff::default()
                }
            }
            _ => {}
        }
    }
    options
}

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    let ws = provide_websocket(&same_origin_ws_url(), options_from_query());
    // A coarse clock for countdowns and throttled rendering.
    let (clock, set_clock) = signal(now_ms());
    if let Ok(handle) = set_interval_with_handle(move || set_clock.set(now_ms()), UI_TICK) {
        on_cleanup(move || handle.clear());
    }
    provide_context(clock);
    view! {
        <header class="topbar">
            <span class="brand">"Switchboard"</span>
            <StatusBadge ws=ws />
        </header>
        <Toasts />
        <main class="page grid">
            <section class="col-main">
                <Chat />
            </section>
            <aside class="col-side">
                <Ticker />
                <Notify />
                <Inspector ws=ws />
            </aside>
        </main>
    }
}

/// The coloured connection-state pill.
#[component]
pub fn StatusBadge(
    /// The connection to show.
    ws: WebSocket,
) -> impl IntoView {
    let label = move || ws.state.with(ConnState::label);
    view! { <span id="status" class=move || format!("badge badge-{}", label())>{label}</span> }
}

/// `x` with `decimals` digits after the point (at most 3), through integers: Rust's float
/// formatting costs the bundle about 10 KB (docs/benchmarks.md).
pub fn fixed(x: f64, decimals: u32) -> String {
    let d = decimals.min(3);
    let scale = 10i64.pow(d);
    let n = (x.abs() * scale as f64).round() as i64;
    let sign = if x < 0.0 && n != 0 { "-" } else { "" };
    match d {
        0 => format!("{sign}{n}"),
        d => format!("{sign}{}.{:0w$}", n / scale, n % scale, w = d as usize),
    }
}

/// `HH:MM:SS` of a server timestamp, in the browser's time zone.
fn clock_time(ts: u64) -> String {
    let d = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ts as f64));
    format!(
        "{:02}:{:02}:{:02}",
        d.get_hours(),
        d.get_minutes(),
        d.get_seconds()
    )
}

/// Join form, then the room.
#[component]
fn Chat() -> impl IntoView {
    let (name, set_name) = signal(String::new());
    let (room, set_room) = signal(String::from("lobby"));
    let (joined, set_joined) = signal(None::<(String, String)>);
    let join = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let n = name.get_untracked().trim().to_owned();
        let r: String = room
            .get_untracked()
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "_-".contains(*c))
            .collect();
        if !n.is_empty() && !r.is_empty() {
            set_joined.set(Some((n, r)));
        }
    };
    view! {
        <div class="card chat">
            <Show
                when=move || joined.get().is_some()
                fallback=move || view! {
                    <h2>"Chat"</h2>
                    <form id="join-form" class="join" on:submit=join>
                        <input id="join-name" placeholder="Your name" maxlength="32"
                            prop:value=name on:input=move |ev| set_name.set(event_target_value(&ev)) />
                        <input id="join-room" placeholder="Room" maxlength="32"
                            prop:value=room on:input=move |ev| set_room.set(event_target_value(&ev)) />
                        <button id="join-button" type="submit">"Join"</button>
                    </form>
                }
            >
                {move || joined.get().map(|(n, r)| view! {
                    <Room name=n room=r on_leave=move || set_joined.set(None) />
                })}
            </Show>
        </div>
    }
}

/// A message of ours on its way: shown as pending until the server acks it.
#[derive(Clone)]
struct Pending {
    text: String,
    /// `None` until the ack (or the refusal); no signal for a line restored from an
    /// earlier run of the page (it is shown until the ack).
    outcome: Option<RwSignal<Option<PublishResult>>>,
}

/// One room: members, notices, messages, typing, composer.
#[component]
fn Room(name: String, room: String, on_leave: impl Fn() + 'static) -> impl IntoView {
    let ws = expect_websocket();
    let clock = expect_context::<ReadSignal<u64>>();
    let channel = format!("room:{room}");
    let who = Payload::new(&Who { name: name.clone() }).ok();
    let sub: Subscription<Chat> = ws.subscribe_with(
        &channel,
        SubOptions {
            presence: who,
            rewind: REWIND,
        },
    );
    let (draft, set_draft) = signal(String::new());
    let (notices, set_notices) = signal(Vec::<String>::new());
    let (send_error, set_send_error) = signal(None::<String>);
    let (pending, set_pending) = signal(Vec::<Pending>::new());
    let last_typing_sent = StoredValue::new(None::<u64>);
    let scroller = NodeRef::<Div>::new();

    Effect::new(move |_| {
        if let Some(ev) = sub.last_presence.get() {
            let who = ev
                .member
                .info
                .parse::<Who>()
                .map(|w| w.name)
                .unwrap_or_default();
            let what = match ev.action {
                PresenceAction::Join => "joined",
                PresenceAction::Leave => "left",
            };
            set_notices.update(|n| {
                n.push(format!("{who} {what}"));
                if n.len() > 5 {
                    n.remove(0);
                }
            });
        }
    });

    // The room's chat lines, oldest first: every one of them, from the subscription's
    // callback (its `messages` signal keeps only the last 200, typing signals included).
    let (log, set_log) = signal(Vec::<Received<Chat>>::new());
    // Back after a disconnect: say whether every missed line came; after a reset, start
    // over from the latest lines (they follow this state).
    let notice = move |text: &str| {
        set_notices.update(|n| {
            n.push(text.to_owned());
            if n.len() > 5 {
                n.remove(0);
            }
        });
    };
    sub.on_state(move |state| {
        if let SubState::Live { recovery, .. } = state {
            match recovery {
                Recovery::Fresh => {}
                Recovery::Recovered | Recovery::GapFilled => notice("caught up"),
                Recovery::Reset(why) => {
                    set_log.set(Vec::new());
                    notice(&format!(
                        "some messages were lost ({why:?}): showing the latest"
                    ));
                }
            }
        }
    });
    sub.on_message(move |m| {
        if let Ok(m) = m
            && !m.ephemeral
        {
            set_log.update(|l| {
                l.push(m.clone());
                if l.len() > CHAT_LOG {
                    l.remove(0);
                }
            });
        }
    });
    let lines = move || log.get();
    // Ours that are not in the room's lines yet: sent from this page, or restored from
    // an earlier run of it (until the server acks them).
    let restored_channel = channel.clone();
    let waiting =
        move || -> Vec<Pending> {
            // A sorted `Vec`, not a `BTreeSet`: collecting into one sorts stably, and each
            // stable sort costs the bundle ~1 KB brotli (docs/benchmarks.md).
            let mut shown: Vec<u64> = log.with(|m| m.iter().filter_map(|m| m.offset).collect());
            shown.sort_unstable();
            let restored = ws.restored.with(|r| {
                r.iter()
                    .filter(|p| p.channel == restored_channel)
                    .filter_map(|p| p.data.parse::<Chat>().ok())
                    .map(|c| Pending {
                        text: c.text,
                        outcome: None,
                    })
                    .collect::<Vec<_>>()
            });
            restored
                .into_iter()
                .chain(pending.get().into_iter().filter(
                    |p| match p.outcome.and_then(|o| o.get()) {
                        Some(Ok(Some(offset))) => shown.binary_search(&offset).is_err(),
                        Some(Ok(None)) => false,
                        _ => true,
                    },
                ))
                .collect()
        };
    // Keep the newest line in view.
    Effect::new(move |_| {
        log.track();
        pending.track();
        if let Some(el) = scroller.get() {
            el.set_scroll_top(el.scroll_height());
        }
    });

    let me = name.clone();
    let typing = move || {
        clock.track();
        let now = ws.server_now();
        // One name once, however many signals it sent.
        let mut names: Vec<String> = sub.messages.with(|m| {
            m.iter()
                .filter(|msg| msg.ephemeral && msg.data.typing && now - (msg.ts as f64) < 3000.0)
                .map(|msg| msg.data.name.clone())
                .filter(|n| *n != me)
                .collect()
        });
        names.sort_unstable();
        names.dedup();
        match names.len() {
            0 => String::new(),
            1 => format!("{} is typing…", names[0]),
            _ => format!("{} are typing…", names.join(", ")),
        }
    };

    let me2 = name.clone();
    let ch2 = channel.clone();
    let on_input = move |ev| {
        set_draft.set(event_target_value(&ev));
        // Typing indicator: ephemeral, at most one every 2 s.
        let now = now_ms();
        if last_typing_sent
            .get_value()
            .is_none_or(|last| now.saturating_sub(last) > 2000)
        {
            last_typing_sent.set_value(Some(now));
            let signal = Chat {
                name: me2.clone(),
                text: String::new(),
                typing: true,
            };
            let _ = ws.publish_ephemeral(&ch2, &signal);
        }
    };
    let me3 = name.clone();
    let ch3 = channel.clone();
    let send = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let text = draft.get_untracked();
        if text.trim().is_empty() {
            return;
        }
        let line = Chat {
            name: me3.clone(),
            text: text.clone(),
            typing: false,
        };
        match ws.publish(&ch3, &line) {
            Ok(ack) => {
                set_draft.set(String::new());
                set_send_error.set(None);
                let outcome = RwSignal::new(None);
                set_pending.update(|p| {
                    p.push(Pending {
                        text,
                        outcome: Some(outcome),
                    })
                });
                leptos::task::spawn_local(async move {
                    let result = ack.await;
                    if let Err(e) = &result {
                        set_send_error.set(Some(format!("not delivered: {e}")));
                    }
                    outcome.try_set(Some(result));
                });
            }
            Err(e) => set_send_error.set(Some(format!("not sent: {e}"))),
        }
    };
    let title = format!("#{room}");
    view! {
        <div class="room">
            <div class="room-head">
                <h2>{title}</h2>
                <span class="muted">"as " <b>{name.clone()}</b></span>
                <button class="link" on:click=move |_| on_leave()>"Leave"</button>
            </div>
            <div class="room-body">
                <div class="messages" node_ref=scroller>
                    <ul id="messages">
                        <For
                            each=lines
                            key=|m| (m.offset, m.ts)
                            children=move |m| view! {
                                <li class="msg">
                                    <time class="ts">{clock_time(m.ts)}</time>
                                    <b class="who">{m.data.name.clone()}</b>
                                    <span class="text">{m.data.text.clone()}</span>
                                </li>
                            }
                        />
                    </ul>
                    <ul id="pending">
                        {move || waiting().into_iter().map(|p| {
                            let state = move || match p.outcome.and_then(|o| o.get()) {
                                Some(Err(e)) => format!("not delivered: {e}"),
                                _ => "sending…".to_owned(),
                            };
                            view! {
                                <li class="msg pending">
                                    <b class="who">{name.clone()}</b>
                                    <span class="text">{p.text.clone()}</span>
                                    <span class="muted state">{state}</span>
                                </li>
                            }
                        }).collect_view()}
                    </ul>
                </div>
                <aside class="members">
                    <h3>"Members " <span id="member-count" class="count">{move || sub.members.with(Vec::len)}</span></h3>
                    <ul id="members">
                        {move || {
                            // By name, as people read a member list (ids are random).
                            let mut members: Vec<_> = sub
                                .members
                                .get()
                                .into_iter()
                                .map(|m| (m.info.parse::<Who>().map(|w| w.name).unwrap_or_default(), m.connections))
                                .collect();
                            members.sort_unstable();
                            members.into_iter().map(|(n, connections)| {
                                let tabs = (connections > 1).then(|| format!(" ×{connections}"));
                                view! { <li>{n}<span class="muted">{tabs}</span></li> }
                            }).collect_view()
                        }}
                    </ul>
                    <ul id="notices" class="notices">
                        {move || notices.get().into_iter().map(|n| view! { <li>{n}</li> }).collect_view()}
                    </ul>
                </aside>
            </div>
            <p id="typing" class="typing">{typing}</p>
            <form class="composer" on:submit=send>
                <input id="chat-input" placeholder="Message" autocomplete="off"
                    prop:value=draft on:input=on_input />
                <button id="chat-send" type="submit">"Send"</button>
            </form>
            <p class="error">{move || send_error.get()}</p>
        </div>
    }
}

/// The live ticker, sampled at the UI tick rather than re-rendered per message.
#[component]
fn Ticker() -> impl IntoView {
    let ws = expect_websocket();
    let clock = expect_context::<ReadSignal<u64>>();
    let sub: Subscription<Tick> = ws.subscribe("ticker:demo");
    let sample = Memo::new(move |_| {
        clock.track();
        sub.messages.with_untracked(|m| {
            m.iter()
                .rev()
                .take(60)
                .map(|msg| msg.data.price)
                .collect::<Vec<f64>>()
        })
    });
    let last = move || {
        sample
            .with(|p| p.first().copied())
            .map(|p| fixed(p, 2))
            .unwrap_or_else(|| "–".into())
    };
    let points = move || {
        sample.with(|prices| {
            let (lo, hi) = prices
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(*p), hi.max(*p)));
            let span = (hi - lo).max(0.01);
            let step = 300.0 / (prices.len().max(2) - 1) as f64;
            prices
                .iter()
                .rev()
                .enumerate()
                .map(|(i, p)| {
                    format!(
                        "{},{}",
                        fixed(i as f64 * step, 1),
                        fixed(40.0 - (p - lo) / span * 36.0, 1)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
    };
    view! {
        <section class="card ticker">
            <h2>"Ticker " <span class="muted">"SBX"</span></h2>
            <div id="ticker-price" class="price">{last}</div>
            <svg viewBox="0 0 300 44" class="spark" preserveAspectRatio="none">
                <polyline points=points />
            </svg>
        </section>
    }
}

/// Sends a notification to everyone (they show up as toasts).
#[component]
fn Notify() -> impl IntoView {
    let ws = expect_websocket();
    let (text, set_text) = signal(String::from("Deploy finished ✔"));
    let send = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let notice = Notice {
            text: text.get_untracked(),
        };
        let _ = ws.publish("notifications", &notice);
    };
    view! {
        <section class="card">
            <h2>"Notify everyone"</h2>
            <form class="row" on:submit=send>
                <input id="notify-text" prop:value=text on:input=move |ev| set_text.set(event_target_value(&ev)) />
                <button id="notify-send" type="submit">"Send"</button>
            </form>
        </section>
    }
}

/// Notifications as toasts: the last three, each for 6 s (on the server's clock).
#[component]
fn Toasts() -> impl IntoView {
    let ws = expect_websocket();
    let clock = expect_context::<ReadSignal<u64>>();
    let sub: Subscription<Notice> = ws.subscribe("notifications");
    let visible = move || {
        clock.track();
        let now = ws.server_now();
        sub.messages.with(|m| {
            m.iter()
                .rev()
                .filter(|msg| now - (msg.ts as f64) < 6000.0)
                .take(3)
                .map(|msg| msg.data.text.clone())
                .collect::<Vec<_>>()
        })
    };
    view! {
        <div id="toasts" class="toasts">
            {move || visible().into_iter().map(|t| view! { <div class="toast">{t}</div> }).collect_view()}
        </div>
    }
}

/// Connection details and the offline switch.
#[component]
pub fn Inspector(
    /// The connection to show.
    ws: WebSocket,
) -> impl IntoView {
    let clock = use_context::<ReadSignal<u64>>();
    let detail = move || match ws.state.get() {
        ConnState::Reconnecting { attempt, at } => {
            let now = clock.map(|c| c.get()).unwrap_or_else(now_ms);
            format!(
                "reconnecting: attempt {attempt} in {} s",
                fixed(at.saturating_sub(now) as f64 / 1000.0, 1)
            )
        }
        other => other.label().to_owned(),
    };
    let rtt = move || {
        ws.rtt_ms
            .get()
            .map(|ms| format!("{} ms", fixed(ms, 1)))
            .unwrap_or_else(|| "–".into())
    };
    let offline = move || ws.state.get() == ConnState::Closed;
    let toggle = move |_| {
        if offline() { ws.open() } else { ws.close() }
    };
    view! {
        <section class="card inspector">
            <h2>"Connection"</h2>
            <dl>
                <dt>"State"</dt>
                <dd id="state-detail">{detail}</dd>
                <dt>"Client id"</dt>
                <dd id="client-id">{move || ws.client_id.get().unwrap_or_else(|| "–".into())}</dd>
                <dt>"Round trip"</dt>
                <dd id="rtt">{rtt}</dd>
                <dt>"Reconnects"</dt>
                <dd id="reconnects">{move || ws.reconnects.get()}</dd>
                <dt>"Queued"</dt>
                <dd id="queued">{move || ws.queued.get()}</dd>
                <dt>"Frames in / out"</dt>
                <dd id="frames">{move || format!("{} / {}", ws.frames_in.get(), ws.frames_out.get())}</dd>
                <dt>"Dropped"</dt>
                <dd id="dropped">{move || ws.dropped.get()}</dd>
                <dt>"Last error"</dt>
                <dd id="last-error">{move || ws.last_error.get().unwrap_or_else(|| "none".into())}</dd>
            </dl>
            <button id="offline-toggle" class="secondary" on:click=toggle>
                {move || if offline() { "Go online" } else { "Go offline" }}
            </button>
        </section>
    }
}

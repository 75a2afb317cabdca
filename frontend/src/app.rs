//! The demo app: chat rooms with presence and typing, server-pushed notifications as toasts,
//! a live ticker rendered at a throttled rate, and a connection inspector with a "go
//! offline" switch. Everything talks through one [`WebSocket`] from context.

use std::time::Duration;

use leptos::prelude::*;
use serde_json::{Value, json};

use crate::use_websocket::{
    ChannelMessage, ConnState, Subscription, UseWebSocketOptions, WebSocket, expect_websocket,
    now_ms, provide_websocket, same_origin_ws_url,
};

/// How often the UI samples fast-changing state (ticker, countdown).
const UI_TICK: Duration = Duration::from_millis(250);

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    let ws = provide_websocket(&same_origin_ws_url(), UseWebSocketOptions::default());
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

fn name_of(info: &Value) -> String {
    info.get("name")
        .and_then(Value::as_str)
        .unwrap_or("anonymous")
        .to_owned()
}

/// A room's chat messages (not its typing indicators), oldest first.
fn stored_messages(sub: Subscription) -> Vec<ChannelMessage> {
    sub.messages
        .get()
        .into_iter()
        .filter(|m| !m.ephemeral)
        .collect()
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

/// One room: members, notices, messages, typing, composer.
#[component]
fn Room(name: String, room: String, on_leave: impl Fn() + 'static) -> impl IntoView {
    let ws = expect_websocket();
    let clock = expect_context::<ReadSignal<f64>>();
    let channel = format!("room:{room}");
    let sub = ws.join(&channel, json!({ "name": name }));
    let (draft, set_draft) = signal(String::new());
    let (notices, set_notices) = signal(Vec::<String>::new());
    let (send_error, set_send_error) = signal(None::<String>);
    let last_typing_sent = StoredValue::new(None::<f64>);

    Effect::new(move |_| {
        if let Some(ev) = sub.last_presence.get() {
            let who = name_of(&ev.member.info.to_value());
            let what = match ev.action {
                switchboard_protocol::PresenceAction::Join => "joined",
                switchboard_protocol::PresenceAction::Leave => "left",
            };
            set_notices.update(|n| {
                n.push(format!("{who} {what}"));
                if n.len() > 5 {
                    n.remove(0);
                }
            });
        }
    });

    let me = name.clone();
    let typing = move || {
        clock.track();
        let now = js_sys::Date::now();
        let mut names: Vec<String> = sub.messages.with(|m| {
            m.iter()
                .filter(|msg| msg.ephemeral && now - (msg.ts as f64) < 3000.0)
                .filter_map(|msg| {
                    msg.data
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .filter(|n| *n != me)
                .collect()
        });
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
            .is_none_or(|last| now - last > 2000.0)
        {
            last_typing_sent.set_value(Some(now));
            let _ = ws.publish_ephemeral(&ch2, json!({ "typing": true, "name": me2 }));
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
        match ws.publish(&ch3, json!({ "name": me3, "text": text })) {
            Ok(()) => {
                set_draft.set(String::new());
                set_send_error.set(None);
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
                <ul id="messages" class="messages">
                    <For
                        each={move || stored_messages(sub)}
                        key={|m| (m.offset, m.ts)}
                        children={move |m| {
                            let who = name_of(&m.data);
                            let text = m.data.get("text").and_then(Value::as_str).unwrap_or_default().to_owned();
                            view! { <li class="msg"><b class="who">{who}</b><span class="text">{text}</span></li> }
                        }}
                    />
                </ul>
                <aside class="members">
                    <h3>"Members " <span id="member-count" class="count">{move || sub.members.with(Vec::len)}</span></h3>
                    <ul id="members">
                        {move || {
                            // By name, as people read a member list (ids are random).
                            let mut members: Vec<_> = sub
                                .members
                                .get()
                                .into_iter()
                                .map(|m| (name_of(&m.info.to_value()), m.connections))
                                .collect();
                            members.sort();
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
    let clock = expect_context::<ReadSignal<f64>>();
    let sub = ws.subscribe("ticker:demo");
    let sample = Memo::new(move |_| {
        clock.track();
        sub.messages.with_untracked(|m| {
            m.iter()
                .rev()
                .take(60)
                .filter_map(|msg| msg.data.get("price").and_then(Value::as_f64))
                .collect::<Vec<f64>>()
        })
    });
    let last = move || {
        sample
            .with(|p| p.first().copied())
            .map(|p| format!("{p:.2}"))
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
                        "{:.1},{:.1}",
                        i as f64 * step,
                        40.0 - (p - lo) / span * 36.0
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
        let _ = ws.publish("notifications", json!({ "text": text.get_untracked() }));
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

/// Notifications as toasts: the last three, each for 6 s.
#[component]
fn Toasts() -> impl IntoView {
    let ws = expect_websocket();
    let clock = expect_context::<ReadSignal<f64>>();
    let sub = ws.subscribe("notifications");
    let visible = move || {
        let now = js_sys::Date::now();
        clock.track();
        sub.messages.with(|m| {
            m.iter()
                .rev()
                .filter(|msg| now - (msg.ts as f64) < 6000.0)
                .take(3)
                .map(|msg| {
                    msg.data
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                })
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
    let clock = use_context::<ReadSignal<f64>>();
    let detail = move || match ws.state.get() {
        ConnState::Reconnecting { attempt, at } => {
            let now = clock.map(|c| c.get()).unwrap_or_else(now_ms);
            format!(
                "reconnecting: attempt {attempt} in {:.1} s",
                ((at - now) / 1000.0).max(0.0)
            )
        }
        other => other.label().to_owned(),
    };
    let rtt = move || {
        ws.rtt_ms
            .get()
            .map(|ms| format!("{ms:.1} ms"))
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

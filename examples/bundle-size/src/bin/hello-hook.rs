//! The same hello-world app plus what a small Switchboard page uses: a connection, its
//! state, one typed subscription's messages and a publish. The difference to `hello` is
//! what the hook costs a library user.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use switchboard_leptos::{ConnState, same_origin_ws_url, use_websocket};

#[derive(Clone, Serialize, Deserialize)]
struct Chat {
    text: String,
}

fn main() {
    leptos::mount::mount_to_body(|| {
        let (count, set_count) = signal(0u32);
        let ws = use_websocket(&same_origin_ws_url());
        let room = ws.subscribe::<Chat>("room:lobby");
        view! {
            <h1>"Hello"</h1>
            <p>{move || if matches!(ws.state.get(), ConnState::Open) { "online" } else { "offline" }}</p>
            <button on:click=move |_| {
                set_count.update(|n| *n += 1);
                let _ = room.publish(&Chat { text: "hi".into() });
            }>
                "Clicked " {move || count.get()} " times"
            </button>
            <ul>
                {move || room.messages.get().into_iter().map(|m| view! { <li>{m.data.text}</li> }).collect_view()}
            </ul>
        }
    });
}

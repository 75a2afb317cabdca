//! The demo app: for now, the connection inspector (state, client id, round-trip time).

use leptos::prelude::*;

use crate::connection::{ConnState, Connection, same_origin_ws_url, use_connection};

/// The whole page.
#[component]
pub fn App() -> impl IntoView {
    let conn = use_connection(same_origin_ws_url());
    view! {
        <header class="topbar">
            <span class="brand">"Switchboard"</span>
            <StatusBadge conn=conn />
        </header>
        <main class="page">
            <Inspector conn=conn />
        </main>
    }
}

/// The coloured connection-state pill.
#[component]
pub fn StatusBadge(
    /// The connection to show.
    conn: Connection,
) -> impl IntoView {
    let label = move || conn.state.with(ConnState::label);
    view! {
        <span id="status" class=move || format!("badge badge-{}", label())>{label}</span>
    }
}

/// Connection details.
#[component]
pub fn Inspector(
    /// The connection to show.
    conn: Connection,
) -> impl IntoView {
    let detail = move || match conn.state.get() {
        ConnState::Reconnecting { attempt, delay } => {
            format!("attempt {attempt} in {:.1} s", delay.as_secs_f64())
        }
        other => other.label().to_owned(),
    };
    let rtt = move || {
        conn.rtt_ms
            .get()
            .map(|ms| format!("{ms:.1} ms"))
            .unwrap_or_else(|| "–".into())
    };
    view! {
        <section class="card inspector">
            <h2>"Connection"</h2>
            <dl>
                <dt>"State"</dt>
                <dd id="state-detail">{detail}</dd>
                <dt>"Client id"</dt>
                <dd id="client-id">{move || conn.client_id.get().unwrap_or_else(|| "–".into())}</dd>
                <dt>"Round trip"</dt>
                <dd id="rtt">{rtt}</dd>
                <dt>"Reconnects"</dt>
                <dd id="reconnects">{move || conn.reconnects.get()}</dd>
                <dt>"Last error"</dt>
                <dd id="last-error">{move || conn.last_error.get().unwrap_or_else(|| "none".into())}</dd>
            </dl>
        </section>
    }
}

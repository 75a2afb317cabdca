//! A hello-world Leptos app with a counter: the baseline `hello-hook` is measured against.

use leptos::prelude::*;

fn main() {
    leptos::mount::mount_to_body(|| {
        let (count, set_count) = signal(0u32);
        view! {
            <h1>"Hello"</h1>
            <button on:click=move |_| set_count.update(|n| *n += 1)>
                "Clicked " {move || count.get()} " times"
            </button>
        }
    });
}

//! The demo app's entry point (built by Trunk from `index.html`).

fn main() {
    switchboard_web::start();
}

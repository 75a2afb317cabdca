//! `cargo run -p switchboard-example-axum`: the example app on http://127.0.0.1:3000, with
//! Switchboard's WebSocket at ws://127.0.0.1:3000/realtime/ws. Ctrl-C stops it.

use std::collections::HashMap;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let members = HashMap::from([("vip".to_owned(), vec!["ada".to_owned()])]);
    let (router, sb) = switchboard_example_axum::build(members)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("example app on http://127.0.0.1:3000 (WebSocket at /realtime/ws)");
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    switchboard_example_axum::serve(listener, router, sb, ctrl_c).await?;
    Ok(())
}

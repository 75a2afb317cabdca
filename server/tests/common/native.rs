//! Helpers for tests that drive the native client: the next item of a subscription, its
//! next message, and waiting until it is live, each within [`WAIT`].

use std::time::Duration;

use futures::StreamExt;
use switchboard_client::SubState;
use switchboard_client::native::SubItem;

pub const WAIT: Duration = Duration::from_secs(10);

pub async fn next<T: serde::de::DeserializeOwned>(
    sub: &mut switchboard_client::native::Subscription<T>,
) -> SubItem<T> {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an item within 10 s")
        .expect("the stream goes on")
}

/// The next message on `sub`, skipping state changes and presence.
pub async fn message<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    sub: &mut switchboard_client::native::Subscription<T>,
) -> switchboard_client::native::Received<T> {
    loop {
        match next(sub).await {
            SubItem::Message(Ok(m)) => return m,
            SubItem::Message(Err(e)) => panic!("undecodable: {e:?}"),
            _ => continue,
        }
    }
}

pub async fn live<T: serde::de::DeserializeOwned>(
    sub: &mut switchboard_client::native::Subscription<T>,
) {
    loop {
        if let SubItem::State(SubState::Live { .. }) = next(sub).await {
            return;
        }
    }
}

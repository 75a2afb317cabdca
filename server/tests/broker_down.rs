//! When the broker fails, clients get `unavailable` (with the frame's id) and the
//! connection stays usable: nothing is dropped silently.

mod common;

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use common::{Client, config};
use futures::future::BoxFuture;
use serde_json::Value;
use switchboard_protocol::{Channel, ErrorCode, Member, ServerFrame, StreamPosition};
use switchboard_server::broker::{Broker, BrokerError, BrokerHandler, PresenceChange, Publication};
use switchboard_server::{AppState, Methods};

/// A broker whose every operation fails, like a Redis that is down.
struct DownBroker;

fn down<T: Send + 'static>() -> BoxFuture<'static, Result<T, BrokerError>> {
    Box::pin(async { Err(BrokerError("connection refused".into())) })
}

impl Broker for DownBroker {
    fn start(&self, _: Arc<dyn BrokerHandler>) {}
    fn subscribe<'a>(
        &'a self,
        _: &'a Channel,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        down()
    }
    fn unsubscribe<'a>(&'a self, _: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        down()
    }
    fn publish(&self, _: Publication) -> BoxFuture<'_, Result<Option<u64>, BrokerError>> {
        down()
    }
    fn broadcast<'a>(
        &'a self,
        _: &'a Channel,
        _: Utf8Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        down()
    }
    fn presence_join<'a>(
        &'a self,
        _: &'a Channel,
        _: &'a str,
        _: &'a str,
        _: Value,
    ) -> BoxFuture<'a, Result<PresenceChange, BrokerError>> {
        down()
    }
    fn presence_leave<'a>(
        &'a self,
        _: &'a Channel,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<PresenceChange>, BrokerError>> {
        down()
    }
    fn presence<'a>(&'a self, _: &'a Channel) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        down()
    }
}

fn error(frame: ServerFrame) -> (Option<String>, ErrorCode) {
    match frame {
        ServerFrame::Error { id, code, .. } => (id.map(|i| i.0), code),
        other => panic!("expected error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_broker_answers_unavailable_and_the_connection_goes_on() {
    let state = AppState::with_broker(config(&[]), Methods::with_builtins(), Arc::new(DownBroker));
    let server = common::start_with(state).await;
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"subscribe","channel":"news"}"#)
        .await;
    assert_eq!(error(c.next().await), (None, ErrorCode::Unavailable));
    c.send_text(r#"{"type":"publish","id":"p1","channel":"news","data":1}"#)
        .await;
    assert_eq!(
        error(c.next().await),
        (Some("p1".into()), ErrorCode::Unavailable)
    );
    c.send_text(r#"{"type":"request","id":"r1","method":"presence","params":{"channel":"news"}}"#)
        .await;
    assert_eq!(
        error(c.next().await),
        (Some("r1".into()), ErrorCode::Unavailable)
    );
    // a retry after the failed subscribe is not refused as "already subscribed"
    c.send_text(r#"{"type":"subscribe","channel":"news"}"#)
        .await;
    assert_eq!(error(c.next().await), (None, ErrorCode::Unavailable));
    c.sync().await;
}

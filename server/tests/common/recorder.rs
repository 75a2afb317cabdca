//! A [`BrokerHandler`] that records what a broker delivers, for broker-level tests.

use std::sync::Mutex;
use std::time::Duration;

use switchboard_protocol::{Channel, ServerFrame, StreamPosition, codec};
use switchboard_server::broker::{BrokerHandler, Delivery};

#[derive(Debug, Clone, PartialEq)]
pub struct Got {
    pub channel: String,
    pub frame: ServerFrame,
    pub position: Option<StreamPosition>,
    pub droppable: bool,
    pub except: Option<String>,
}

#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Got>>);

impl BrokerHandler for Recorder {
    fn deliver(&self, channel: &Channel, d: &Delivery) {
        let mut frames = codec::decode_server(d.frame.as_str());
        self.0.lock().unwrap().push(Got {
            channel: channel.0.clone(),
            frame: frames.remove(0).expect("the broker delivers valid frames"),
            position: d.position.clone(),
            droppable: d.droppable,
            except: d.except.as_ref().map(|c| c.0.clone()),
        });
    }
}

impl Recorder {
    /// Waits until exactly `n` deliveries arrived (and a moment longer, to catch extra
    /// ones), then takes them.
    pub async fn take(&self, n: usize) -> Vec<Got> {
        let arrived = super::eventually(|| self.0.lock().unwrap().len() >= n).await;
        assert!(
            arrived,
            "expected {n} deliveries, got {:?}",
            self.0.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let got = std::mem::take(&mut *self.0.lock().unwrap());
        assert_eq!(got.len(), n, "{got:?}");
        got
    }

    /// Nothing (more) arrives within a short wait.
    pub async fn none(&self) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = std::mem::take(&mut *self.0.lock().unwrap());
        assert!(got.is_empty(), "unexpected deliveries: {got:?}");
    }
}

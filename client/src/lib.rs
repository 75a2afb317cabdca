//! Switchboard's client: the protocol state machine of one connection, without IO, shared
//! by the browser hook (`frontend/`, over gloo and web-sys) and by the native client
//! ([`native`], over tokio and tokio-tungstenite).
//!
//! # Layout
//! - [`core`]: [`ClientCore`], the state machine: frames and ticks in; frames to send,
//!   actions (open or close a socket, fetch a token), deadlines and events out. Time and
//!   randomness are passed in.
//! - [`outbox`]: the bounded queue with its overflow policy, throttling and batching.
//! - [`backoff`]: reconnect delays with full jitter.
//! - [`vecmap`]: sorted-`Vec` maps and sets, `BTreeMap`'s order at a fraction of its size
//!   in the browser bundle.
//! - [`native`] (feature `native`): a tokio driver with a typed API: `publish` awaitable
//!   for its ack, `subscribe::<T>()` as a stream, `request::<P, R>()`.
//!
//! Start reading at [`core`]; `tests/sim.rs` drives it against a simulated server.

pub mod backoff;
pub mod core;
#[cfg(feature = "native")]
pub mod native;
pub mod outbox;
pub mod vecmap;

pub use crate::core::{
    Action, ClientCore, ConnState, Event, Message, Ms, Options, PublishError, PublishId,
    PublishResult, Recovery, RequestError, SubKey, SubOptions, SubState,
};
pub use backoff::Backoff;
pub use outbox::{BatchOptions, Overflow, SendError};
pub use switchboard_protocol::Unrecovered;
pub use vecmap::{VecMap, VecSet};

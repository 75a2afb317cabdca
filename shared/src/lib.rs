//! Switchboard's wire protocol, version [`PROTOCOL_VERSION`]: every frame either side may
//! send, as serde types compiled into both the server and the browser client.
//!
//! Frames are JSON objects in WebSocket **text** messages, tagged by a `"type"` field.
//! Either side may send a JSON **array** of frames as one batch; it means exactly the same as
//! the frames sent one by one, in order. `docs/protocol.md` is the human reference with one
//! example per frame.
//!
//! # Layout
//! - [`client`]: [`ClientFrame`], what a browser sends (`hello`, `ping`, `subscribe`, …).
//! - [`server`]: [`ServerFrame`], what the server sends (`welcome`, `message`, `error`, …).
//! - [`types`]: the values frames carry: ids, [`Channel`] names, [`Member`]s, positions.
//! - [`payload`]: [`Payload`], application JSON carried as text, never parsed by the server.
//! - [`codes`]: [`ErrorCode`] (in `error` frames) and [`CloseCode`] with its reconnect rule.
//! - [`limits`]: [`Limits`] the server announces, and the channel-name grammar.
//! - [`codec`]: decoding text into frames (single or batch) with a precise error per frame,
//!   and encoding frames back.
//! - `msgpack` (feature `msgpack`): the MessagePack encoding, each frame's JSON form
//!   transcoded value by value.
//!
//! # Example
//! ```
//! use switchboard_protocol::{codec, ClientFrame, Limits};
//!
//! let frames = codec::decode_client(r#"{"type":"ping","id":"7"}"#, &Limits::default());
//! assert_eq!(frames, vec![Ok(ClientFrame::Ping { id: Some("7".into()) })]);
//! ```

pub mod client;
pub mod codec;
pub mod codes;
pub mod limits;
#[cfg(feature = "msgpack")]
pub mod msgpack;
pub mod payload;
pub mod server;
pub mod types;
mod wire;

pub use client::ClientFrame;
pub use codes::{CloseCode, ErrorCode, Reconnect};
pub use limits::Limits;
pub use payload::Payload;
pub use server::ServerFrame;
pub use types::{
    Channel, ClientId, ClientInfo, Member, PresenceAction, RequestId, Sender, SessionId,
    StreamPosition, Unrecovered,
};

/// The protocol version announced in `welcome`. Adding a frame kind or a required field is a
/// protocol change and bumps it; adding an optional field does not.
pub const PROTOCOL_VERSION: u32 = 1;

/// The path the server serves the WebSocket on.
pub const WS_PATH: &str = "/ws";

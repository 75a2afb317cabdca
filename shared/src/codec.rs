//! Text ⇄ frames. A WebSocket text message holds one frame (a JSON object) or a batch (a
//! JSON array of frames). Decoding yields one result per frame, so one bad frame in a batch
//! is answered with one `error` while the others are processed.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::client::ClientFrame;
use crate::codes::ErrorCode;
use crate::limits::{Limits, validate_channel};
use crate::server::ServerFrame;
use crate::types::RequestId;

/// Why a frame could not be decoded: becomes an `error` frame via [`FrameError::into_frame`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    /// The frame's `id`, when it had a string one, so the sender can match the error.
    pub id: Option<RequestId>,
    /// What went wrong.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl FrameError {
    fn new(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }

    /// The `error` frame that answers this.
    pub fn into_frame(self) -> ServerFrame {
        ServerFrame::Error {
            id: self.id,
            code: self.code,
            message: self.message,
        }
    }
}

/// One decoded frame, or why it could not be.
pub type Decoded<T> = Result<T, FrameError>;

/// Decodes a client's text message into frames, validating channel names. A batch with more
/// than `limits.max_batch` frames, or text that is not JSON, gives a single error.
pub fn decode_client(text: &str, limits: &Limits) -> Vec<Decoded<ClientFrame>> {
    decode(text, limits.max_batch as usize, &ClientFrame::KINDS)
        .into_iter()
        .map(|r| r.and_then(validate))
        .collect()
}

/// Decodes a server's text message into frames (what a client does).
pub fn decode_server(text: &str) -> Vec<Decoded<ServerFrame>> {
    decode(text, usize::MAX, &ServerFrame::KINDS)
}

/// Encodes one frame as a JSON object.
pub fn encode<T: Serialize>(frame: &T) -> String {
    // Frames are plain data with string keys: serialization cannot fail.
    serde_json::to_string(frame).expect("frames always serialize")
}

/// Encodes frames as one batch (a JSON array), or as a plain object when there is one.
pub fn encode_batch<T: Serialize>(frames: &[T]) -> String {
    match frames {
        [one] => encode(one),
        many => serde_json::to_string(many).expect("frames always serialize"),
    }
}

fn validate(frame: ClientFrame) -> Decoded<ClientFrame> {
    if let Some(channel) = frame.channel()
        && let Err(why) = validate_channel(channel.as_str())
    {
        return Err(FrameError::new(
            frame.id().cloned(),
            ErrorCode::InvalidChannel,
            why,
        ));
    }
    Ok(frame)
}

fn decode<T: DeserializeOwned>(text: &str, max_batch: usize, kinds: &[&str]) -> Vec<Decoded<T>> {
    if !text.trim_start().starts_with('[') {
        return vec![decode_one(text, kinds)];
    }
    match serde_json::from_str::<Vec<&RawValue>>(text) {
        Err(e) => vec![Err(FrameError::new(
            None,
            ErrorCode::BadFrame,
            format!("invalid JSON batch: {e}"),
        ))],
        Ok(parts) if parts.len() > max_batch => vec![Err(FrameError::new(
            None,
            ErrorCode::BatchTooLarge,
            format!("batch of {} frames, the limit is {max_batch}", parts.len()),
        ))],
        Ok(parts) => parts.iter().map(|p| decode_one(p.get(), kinds)).collect(),
    }
}

fn decode_one<T: DeserializeOwned>(text: &str, kinds: &[&str]) -> Decoded<T> {
    serde_json::from_str(text).map_err(|e| classify(text, e, kinds))
}

/// The error path: re-reads the text loosely to say precisely what is wrong.
fn classify(text: &str, err: serde_json::Error, kinds: &[&str]) -> FrameError {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            return FrameError::new(None, ErrorCode::BadFrame, format!("invalid JSON: {err}"));
        }
    };
    let Some(obj) = value.as_object() else {
        return FrameError::new(None, ErrorCode::BadFrame, "a frame must be a JSON object");
    };
    let id = obj.get("id").and_then(Value::as_str).map(RequestId::from);
    match obj.get("type").and_then(Value::as_str) {
        None => FrameError::new(id, ErrorCode::BadFrame, "a frame needs a string \"type\""),
        Some(kind) if !kinds.contains(&kind) => FrameError::new(
            id,
            ErrorCode::UnknownType,
            format!(
                "unknown frame type {kind:?}; expected one of {}",
                kinds.join(", ")
            ),
        ),
        Some(kind) => FrameError::new(
            id,
            ErrorCode::BadFrame,
            format!("invalid {kind} frame: {err}"),
        ),
    }
}

impl ClientFrame {
    /// Every client frame `type`.
    pub const KINDS: [&'static str; 7] = [
        "hello",
        "ping",
        "subscribe",
        "unsubscribe",
        "publish",
        "request",
        "direct",
    ];
}

impl ServerFrame {
    /// Every server frame `type`.
    pub const KINDS: [&'static str; 10] = [
        "welcome",
        "pong",
        "subscribed",
        "unsubscribed",
        "message",
        "presence",
        "ack",
        "response",
        "error",
        "direct",
    ];
}

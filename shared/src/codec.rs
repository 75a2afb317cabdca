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

/// Decodes a client's text message into frames, validating channel names and field sizes.
/// A batch with more than `limits.max_batch` frames, or text that is not JSON, gives a
/// single error.
pub fn decode_client(text: &str, limits: &Limits) -> Vec<Decoded<ClientFrame>> {
    decode_client_iter(text, limits).collect()
}

/// Like [`decode_client`], but decodes the frames of a batch one at a time, as they are
/// taken: a server holds one decoded frame at a time instead of the whole batch.
pub fn decode_client_iter<'a>(
    text: &'a str,
    limits: &'a Limits,
) -> impl Iterator<Item = Decoded<ClientFrame>> + 'a {
    let parts = split(text, limits.max_batch as usize);
    let max_id = limits.max_id_bytes as usize;
    parts.into_iter().map(move |part| {
        part.and_then(|part| decode_one(part, &ClientFrame::KINDS))
            .and_then(|frame| validate(frame, limits))
            .map_err(|mut e| {
                // Never echo an oversized id back, whatever the error.
                e.id = e.id.filter(|id| id.as_str().len() <= max_id);
                e
            })
    })
}

/// Decodes a server's text message into frames (what a client does). A bad frame's error
/// is serde's message as it is: a client reports it (it is the server's bug) and does not
/// answer it, and the loose second read that [`decode_client`] does to say what is wrong
/// would put a generic JSON tree (`serde_json::Value`) in every browser bundle (~1.7 KB
/// brotli).
pub fn decode_server(text: &str) -> Vec<Decoded<ServerFrame>> {
    split(text, usize::MAX)
        .into_iter()
        .map(|part| {
            part.and_then(|p| {
                serde_json::from_str(p).map_err(|e| {
                    FrameError::new(None, ErrorCode::BadFrame, format!("invalid frame: {e}"))
                })
            })
        })
        .collect()
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

fn validate(frame: ClientFrame, limits: &Limits) -> Decoded<ClientFrame> {
    if let Some(channel) = frame.channel()
        && let Err(why) = validate_channel(channel.as_str())
    {
        return Err(FrameError::new(
            frame.id().cloned(),
            ErrorCode::InvalidChannel,
            why,
        ));
    }
    check_sizes(&frame, limits)?;
    Ok(frame)
}

/// Refuses ids and presence info over their limits with `too_large`. An id over its limit
/// is not echoed back in the error (that would send the oversized value back).
fn check_sizes(frame: &ClientFrame, limits: &Limits) -> Result<(), FrameError> {
    let max_id = limits.max_id_bytes as usize;
    let id = frame.id().filter(|id| id.as_str().len() <= max_id).cloned();
    let too_long = |what: &str, len: usize| {
        Err(FrameError::new(
            id.clone(),
            ErrorCode::TooLarge,
            format!("{what} is {len} bytes, the limit is {max_id}"),
        ))
    };
    let mut strings: Vec<(&str, &str)> = Vec::new();
    if let Some(frame_id) = frame.id() {
        strings.push(("the id", frame_id.as_str()));
    }
    match frame {
        ClientFrame::Hello { client, resume, .. } => {
            if let Some(info) = client {
                strings.push(("client.name", &info.name));
                strings.push(("client.version", &info.version));
            }
            if let Some(resume) = resume {
                strings.push(("resume", resume.as_str()));
            }
        }
        ClientFrame::Request { method, .. } => strings.push(("the method name", method)),
        ClientFrame::Direct { to, .. } => strings.push(("the target id", to.as_str())),
        ClientFrame::Subscribe {
            since, presence, ..
        } => {
            if let Some(since) = since {
                strings.push(("since.epoch", &since.epoch));
            }
            if let Some(info) = presence {
                let len = info.len();
                let max = limits.max_presence_bytes as usize;
                if len > max {
                    return Err(FrameError::new(
                        None,
                        ErrorCode::TooLarge,
                        format!("presence info is {len} bytes of JSON text, the limit is {max}"),
                    ));
                }
            }
        }
        _ => {}
    }
    match strings.into_iter().find(|(_, s)| s.len() > max_id) {
        Some((what, s)) => too_long(what, s.len()),
        None => Ok(()),
    }
}

/// Splits a message into the texts of its frames: the message itself, or the members of a
/// batch (borrowed slices of `text`, not yet decoded).
fn split(text: &str, max_batch: usize) -> Vec<Result<&str, FrameError>> {
    if !text.trim_start().starts_with('[') {
        return vec![Ok(text)];
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
        Ok(parts) => parts.into_iter().map(|p| Ok(p.get())).collect(),
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

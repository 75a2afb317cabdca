//! Encoded server frames: what queues, the broker and history carry. A frame is encoded
//! once into shared bytes, and the same bytes are offered to every subscriber's queue.
//!
//! The hub and the broker deal in [`Encoded`] (a `bytes::Bytes` of JSON text), never in
//! socket types, so a broker or a store can carry them without knowing about WebSockets.
//! A frame also carries its permessage-deflate form, made by the first connection that
//! sends it compressed and shared by every other (see [`Encoded::deflated`]).

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use switchboard_protocol::{Channel, Payload, Sender, ServerFrame, StreamPosition, codec};

/// One server frame, encoded as JSON text, cheap to clone (one pointer, shared).
#[derive(Clone)]
pub struct Encoded(Arc<Inner>);

struct Inner {
    text: Bytes,
    /// The MessagePack form, once a connection that speaks it needed it.
    msgpack: OnceLock<Bytes>,
    /// The compressed payload per [`Encoding`] (no context, 15-bit window), once a
    /// connection needed it; `None` inside when compressing does not make it smaller.
    deflated: [OnceLock<Option<Bytes>>; 2],
}

/// How a connection's frames are written (`Sec-WebSocket-Protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// JSON text messages (the default).
    #[default]
    Json,
    /// MessagePack binary messages (`switchboard.v1.msgpack`).
    MsgPack,
}

impl PartialEq for Encoded {
    fn eq(&self, other: &Self) -> bool {
        self.0.text == other.0.text
    }
}

impl Eq for Encoded {}

impl Encoded {
    fn wrap(text: Bytes) -> Self {
        Self(Arc::new(Inner {
            text,
            msgpack: OnceLock::new(),
            deflated: [OnceLock::new(), OnceLock::new()],
        }))
    }

    /// Encodes `frame`.
    pub fn new(frame: &ServerFrame) -> Self {
        Self::wrap(Bytes::from(codec::encode(frame)))
    }

    /// Wraps bytes that already hold one encoded frame (from a store or another node).
    /// Returns `None` unless they are UTF-8.
    pub fn from_bytes(bytes: Bytes) -> Option<Self> {
        std::str::from_utf8(&bytes)
            .is_ok()
            .then(|| Self::wrap(bytes))
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0.text
    }

    /// The frame's text.
    pub fn as_str(&self) -> &str {
        // Constructed from UTF-8 only (see `new` and `from_bytes`).
        std::str::from_utf8(&self.0.text).unwrap_or_default()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.text.len()
    }

    /// True for an empty frame (never produced by [`Encoded::new`]).
    pub fn is_empty(&self) -> bool {
        self.0.text.is_empty()
    }

    /// The frame as a connection speaking `encoding` receives it: the JSON text, or its
    /// MessagePack form, made by the first such connection and shared by every clone.
    pub fn encoded(&self, encoding: Encoding) -> &Bytes {
        let inner = &*self.0;
        match encoding {
            Encoding::Json => &inner.text,
            // Server frames are valid JSON by construction, so this does not fail.
            Encoding::MsgPack => inner.msgpack.get_or_init(|| {
                switchboard_protocol::msgpack::from_json(&inner.text)
                    .map(Bytes::from)
                    .unwrap_or_default()
            }),
        }
    }

    /// The permessage-deflate payload of this frame in `encoding` (no context takeover,
    /// 15-bit window, zlib `level`), compressed by the first caller and shared by every
    /// clone: a broadcast is compressed once per encoding in use. `None` when compressing
    /// does not make it smaller. (Every caller in one process uses the server's one level.)
    pub fn deflated(&self, encoding: Encoding, level: u32) -> Option<&Bytes> {
        let slot = &self.0.deflated[encoding as usize];
        slot.get_or_init(|| crate::deflate::compress(self.encoded(encoding), 15, level))
            .as_ref()
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({})", self.as_str())
    }
}

impl From<&ServerFrame> for Encoded {
    fn from(frame: &ServerFrame) -> Self {
        Self::new(frame)
    }
}

/// The `message` frame of a publication without its stream position: what a stream
/// stores. [`with_position`] completes it once the stream has numbered it; an ephemeral
/// message is sent as it is.
pub fn message_body(
    channel: &Channel,
    from: Option<Sender>,
    data: Payload,
    ts: u64,
    ephemeral: bool,
) -> Bytes {
    let frame = ServerFrame::Message {
        channel: channel.clone(),
        from,
        data,
        ts,
        ephemeral,
        offset: None,
        epoch: None,
    };
    Bytes::from(codec::encode(&frame))
}

/// A stored message's body with its position appended: byte for byte what encoding the
/// `message` frame with `offset` and `epoch` gives, since they are its last fields.
pub fn with_position(body: &[u8], position: &StreamPosition) -> Encoded {
    debug_assert_eq!(body.last(), Some(&b'}'));
    let open = &body[..body.len().saturating_sub(1)];
    let mut out = BytesMut::with_capacity(body.len() + 40 + position.epoch.len());
    out.put_slice(open);
    out.put_slice(b",\"offset\":");
    out.put_slice(position.offset.to_string().as_bytes());
    out.put_slice(b",\"epoch\":");
    // Epochs are made by the server (letters and digits), but encode them properly anyway.
    out.put_slice(
        serde_json::to_string(&position.epoch)
            .unwrap_or_default()
            .as_bytes(),
    );
    out.put_u8(b'}');
    Encoded::wrap(out.freeze())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_body_with_its_position_is_the_full_message_frame() {
        let from = Some(Sender {
            client_id: "c1".into(),
            user_id: Some("u1".into()),
        });
        let channel = Channel::from("room:a");
        let body = message_body(&channel, from.clone(), json!({"t": "hi"}).into(), 17, false);
        let position = StreamPosition {
            offset: 42,
            epoch: "ab12".into(),
        };
        let full = ServerFrame::Message {
            channel,
            from,
            data: json!({"t": "hi"}).into(),
            ts: 17,
            ephemeral: false,
            offset: Some(42),
            epoch: Some("ab12".into()),
        };
        assert_eq!(
            with_position(&body, &position).as_str(),
            codec::encode(&full)
        );
    }

    #[test]
    fn a_frame_is_compressed_once_for_all_its_clones() {
        let body = message_body(
            &Channel::from("room:a"),
            None,
            json!({"t": "hello ".repeat(100)}).into(),
            17,
            false,
        );
        let frame = Encoded::from_bytes(body).unwrap();
        let queued: Vec<Encoded> = (0..3).map(|_| frame.clone()).collect();
        let first = queued[0].deflated(Encoding::Json, 6).unwrap();
        assert!(first.len() < frame.len() / 4);
        for other in &queued[1..] {
            // The very same bytes, not a second compression.
            assert_eq!(
                other.deflated(Encoding::Json, 6).unwrap().as_ptr(),
                first.as_ptr()
            );
        }
        // A frame that does not shrink keeps no copy.
        let tiny = Encoded::from_bytes(Bytes::from_static(b"{}")).unwrap();
        assert_eq!(tiny.deflated(Encoding::Json, 6), None);
        // The MessagePack form too: made once, smaller than the text, compressed apart.
        let packed = queued[1].encoded(Encoding::MsgPack);
        assert!(packed.len() < frame.len());
        assert_eq!(
            queued[2].encoded(Encoding::MsgPack).as_ptr(),
            packed.as_ptr()
        );
        let packed_deflated = queued[2].deflated(Encoding::MsgPack, 6).unwrap();
        assert_ne!(packed_deflated.as_ptr(), first.as_ptr());
    }

    #[test]
    fn only_utf8_bytes_make_a_frame() {
        assert!(Encoded::from_bytes(Bytes::from_static(b"{}")).is_some());
        assert!(Encoded::from_bytes(Bytes::from_static(b"\xff")).is_none());
    }
}

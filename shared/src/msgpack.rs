//! The MessagePack encoding (feature `msgpack`), negotiated with `Sec-WebSocket-Protocol`
//! ([`SUBPROTOCOL_MSGPACK`]); JSON stays the default.
//!
//! A frame's MessagePack form is its JSON form transcoded value by value: objects become
//! maps with the same string keys (`"type"` first, as in JSON), strings stay strings,
//! integers take their smallest MessagePack form, other numbers are float64, and
//! application values (`data`, `params`, `result`, presence `info`) become native
//! MessagePack values. So both encodings share every type, field name and pinned frame of
//! this crate, a batch is an array of maps, and a JavaScript client decodes a frame with
//! any MessagePack library into the object it would get from `JSON.parse`.
//!
//! Going the other way (what a client sends) the same rules apply in reverse; MessagePack
//! values that JSON has no form for are refused, except `bin`, which becomes an array of
//! byte values. Numbers beyond 64-bit integers are doubles in MessagePack, so unlike JSON
//! text they do not pass through digit for digit.

use std::io::{self, Cursor, Write};

/// `Sec-WebSocket-Protocol` for JSON text frames (the default when none is offered).
pub const SUBPROTOCOL_JSON: &str = "switchboard.v1.json";
/// `Sec-WebSocket-Protocol` for MessagePack binary frames.
pub const SUBPROTOCOL_MSGPACK: &str = "switchboard.v1.msgpack";

/// Deepest nesting accepted, as for JSON text (serde_json's limit).
const MAX_DEPTH: usize = 128;

/// Why a message could not be transcoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgpackError {
    /// Not one well-formed value of the kinds JSON has.
    #[error("not a MessagePack frame: {0}")]
    Invalid(String),
    /// Bytes after the one value.
    #[error("bytes after the MessagePack value")]
    Trailing,
    /// Its JSON form would exceed the limit.
    #[error("larger than {0} bytes as JSON")]
    TooBig(usize),
}

/// The MessagePack form of one JSON text (a frame or a batch).
pub fn from_json(json: &[u8]) -> Result<Vec<u8>, MsgpackError> {
    let mut out = Vec::with_capacity(json.len());
    let mut de = serde_json::Deserializer::from_slice(json);
    let mut ser = rmp_serde::Serializer::new(&mut out);
    serde_transcode::transcode(&mut de, &mut ser)
        .map_err(|e| MsgpackError::Invalid(e.to_string()))?;
    de.end().map_err(|_| MsgpackError::Trailing)?;
    Ok(out)
}

/// The JSON text of one MessagePack value, refused once it would exceed `max_json` bytes
/// (so a small message that expands cannot grow past the limit JSON has).
pub fn to_json(msgpack: &[u8], max_json: usize) -> Result<String, MsgpackError> {
    let mut de = rmp_serde::Deserializer::new(Cursor::new(msgpack));
    de.set_max_depth(MAX_DEPTH);
    let mut out = Limited {
        bytes: Vec::with_capacity(msgpack.len().min(max_json) + 16),
        max: max_json,
        over: false,
    };
    let result = serde_transcode::transcode(&mut de, &mut serde_json::Serializer::new(&mut out));
    if out.over {
        return Err(MsgpackError::TooBig(max_json));
    }
    result.map_err(|e| MsgpackError::Invalid(e.to_string()))?;
    if de.position() != msgpack.len() as u64 {
        return Err(MsgpackError::Trailing);
    }
    // serde_json writes UTF-8 only.
    String::from_utf8(out.bytes).map_err(|e| MsgpackError::Invalid(e.to_string()))
}

/// A writer that refuses to grow past `max` bytes.
struct Limited {
    bytes: Vec<u8>,
    max: usize,
    over: bool,
}

impl Write for Limited {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > self.max {
            self.over = true;
            return Err(io::Error::other("too big"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_goes_to_messagepack_and_back() {
        let json = r#"{"type":"message","channel":"room:a","data":{"t":"hi","n":[1,-2,3.5,null,true]},"ts":1732,"offset":42,"epoch":"ab12"}"#;
        let packed = from_json(json.as_bytes()).unwrap();
        assert!(
            packed.len() < json.len(),
            "{} vs {}",
            packed.len(),
            json.len()
        );
        // A map of 6 with "type" first: fixmap 0x86, fixstr "type".
        assert_eq!(&packed[..6], b"\x86\xa4type");
        assert_eq!(to_json(&packed, 1 << 20).unwrap(), json);
    }

    #[test]
    fn what_is_not_json_shaped_is_refused_with_a_reason() {
        // Truncated.
        let packed = from_json(br#"{"type":"ping","id":"1"}"#).unwrap();
        assert!(matches!(
            to_json(&packed[..packed.len() - 1], 1024),
            Err(MsgpackError::Invalid(_))
        ));
        // Two values in one message.
        let mut two = packed.clone();
        two.extend_from_slice(&packed);
        assert_eq!(to_json(&two, 1024), Err(MsgpackError::Trailing));
        // Expands past the limit as JSON: 1,000 nils are 1,000 bytes, 5,000 as JSON.
        let mut nils = vec![0xdc, 0x03, 0xe8];
        nils.extend(std::iter::repeat_n(0xc0, 1000));
        assert_eq!(to_json(&nils, 4096), Err(MsgpackError::TooBig(4096)));
        assert!(to_json(&nils, 8192).is_ok());
        // Nested deeper than JSON allows.
        let deep: Vec<u8> = std::iter::repeat_n(0x91, 200).chain([0xc0]).collect();
        assert!(matches!(
            to_json(&deep, 1 << 20),
            Err(MsgpackError::Invalid(_))
        ));
        // Not JSON in the first place.
        assert!(from_json(b"{").is_err());
        assert_eq!(from_json(b"{} {}"), Err(MsgpackError::Trailing));
    }

    #[test]
    fn bin_becomes_an_array_of_bytes() {
        // {"type":"publish","data":bin8[1,2]}
        let mut packed = vec![0x82, 0xa4];
        packed.extend_from_slice(b"type");
        packed.push(0xa7);
        packed.extend_from_slice(b"publish");
        packed.push(0xa4);
        packed.extend_from_slice(b"data");
        packed.extend_from_slice(&[0xc4, 0x02, 0x01, 0x02]);
        assert_eq!(
            to_json(&packed, 1024).unwrap(),
            r#"{"type":"publish","data":[1,2]}"#
        );
    }
}

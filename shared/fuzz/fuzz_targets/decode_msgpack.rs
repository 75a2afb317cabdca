//! What the server runs on every binary message of a MessagePack connection: arbitrary
//! bytes to JSON (bounded), then the frame decoder. It must never panic, never produce more
//! JSON than the limit, and what it produces must be JSON that goes back to MessagePack.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::Limits;
use switchboard_protocol::codec::decode_client;
use switchboard_protocol::msgpack::{from_json, to_json};

fuzz_target!(|data: &[u8]| {
    let max = 4 * data.len() + 16;
    if let Ok(json) = to_json(data, max) {
        assert!(json.len() <= max);
        from_json(json.as_bytes()).expect("transcoded JSON goes back to MessagePack");
        let _ = decode_client(&json, &Limits::default());
    }
});

//! The server's decoder on arbitrary text: it must never panic, and every frame it accepts
//! must encode to text it accepts again, as the same kind of frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::Limits;
use switchboard_protocol::codec::{decode_client, encode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    for frame in decode_client(text, &limits).into_iter().flatten() {
        let again = decode_client(&encode(&frame), &limits);
        assert_eq!(again.len(), 1, "one frame re-encodes to one frame");
        let again = again
            .into_iter()
            .next()
            .unwrap()
            .expect("re-encoded frame decodes");
        assert_eq!(
            std::mem::discriminant(&again),
            std::mem::discriminant(&frame)
        );
    }
});

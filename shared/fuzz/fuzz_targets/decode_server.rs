//! The client's decoder (what the browser runs on every server text) on arbitrary text: it
//! must never panic, and every frame it accepts must encode to text it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::codec::{decode_server, encode};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for frame in decode_server(text).into_iter().flatten() {
        let again = decode_server(&encode(&frame));
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
